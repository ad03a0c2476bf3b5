"""`python -m higgslab.finetune data=PREPARED_DIR output_dir=DIR method=lora|audio|full steps=N ...`

Hydra config `higgslab/conf/finetune.yaml` (the method's own settings in `conf/finetune/<method>.yaml`).
Many processes: `torchrun --nproc_per_node N -m higgslab.finetune ... distributed=ddp|fsdp`; several machines:
torchrun's own `--nnodes`, `--node_rank` and `--rdzv_endpoint`. The loop: `higgslab/train/finetune.py`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from higgslab.conf import command


def run(cfg: DictConfig) -> None:
    from higgslab.train.finetune import finetune, settings_from

    finetune(settings_from(cfg))


main = command("finetune", run)


if __name__ == "__main__":
    main()
