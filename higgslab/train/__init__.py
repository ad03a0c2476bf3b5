"""higgslab-mini: train a small tokenizer + DualFFN LM on synthetic espeak-ng speech (issue 7).

python -m higgslab.train.data         # corpus (also run by each stage when missing)
python -m higgslab.train.tokenizer    # stage 1 → runs/mini/tokenizer/
python -m higgslab.train.lm           # stage 2 → runs/mini/lm/   (experiment=mini_no_dualffn: ablation)
python -m higgslab.train.export       # ship → higgslab/assets/mini/{model,tokenizer}/
"""
