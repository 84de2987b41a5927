"""What the CPU demo needs before training: the synthetic dataset and the tiny pretrained
components that stand in for the downloaded checkpoints of the real recipe.

``train.py`` calls ``prepare_demo`` before ``train``; a config without ``data.synthetic`` and with
``components.enabled: false`` (every real recipe) passes through unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from gsva.config import Config
from gsva.demo.components import ComponentPaths, prepare_components
from gsva.demo.synthetic import synthetic_dataset_exists, write_synthetic_grefcoco
from gsva.distributed import barrier, is_main
from gsva.engine.distributed import init_distributed

LOGGER = logging.getLogger(__name__)


def prepare_demo(cfg: Config) -> Config:
    """Write the synthetic set and pretrain the tiny components when the config asks for them
    (rank 0 works, the others wait); returns the config pointing at the component files."""
    init_distributed()
    if is_main():
        spec = cfg.data.synthetic
        if spec is not None and not synthetic_dataset_exists(cfg.data.dataset_dir, spec):
            LOGGER.info("writing the synthetic dataset to %s", cfg.data.dataset_dir)
            write_synthetic_grefcoco(cfg.data.dataset_dir, spec)
        if cfg.components.enabled:
            prepare_components(cfg)
    barrier()
    if not cfg.components.enabled:
        return cfg
    paths = ComponentPaths.under(cfg.components.output_dir)
    if cfg.model.mask_decoder == "sam2":
        mask_model = {"sam2_path": str(paths.sam2_dir)}
    else:
        mask_model = {"sam_checkpoint": str(paths.sam_checkpoint), "sam_type": "tiny"}
    model = replace(cfg.model, llava_path=str(paths.llava_dir), **mask_model)
    return replace(cfg, model=model)
