"""`python -m higgslab.prepare data=DIR_OR_JSONL output_dir=DIR`: audio + transcripts -> code shards + manifest.

Hydra config `higgslab/conf/prepare.yaml`; the format, the inputs and resuming: `higgslab.train.prepare`.
The settings are checked first (a bad one is one `error:` line, exit code 2, nothing loaded or written);
bad data is skipped and listed at the end, one line each. Exit code 1 when no example was prepared.
Under `torchrun --nproc_per_node N -m higgslab.prepare ...` each rank encodes its share.
"""

from __future__ import annotations

from omegaconf import DictConfig

from higgslab.conf import command


def run(cfg: DictConfig) -> int:
    """One CLI run; returns the exit code."""
    from higgslab.train.prepare import prepare, settings_from, summary

    result = prepare(settings_from(cfg))
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    print(summary(result))
    return 0 if result.examples else 1


main = command("prepare", run)


if __name__ == "__main__":
    main()
