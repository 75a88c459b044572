"""LoRA fine-tuning of an editor's transformer on an ``nhr`` export.

``data`` streams the export's triplets and buckets them, ``cache`` keeps their latents
and text embeddings, ``trainers`` holds what differs per editor (FLUX.1 Kontext), and
``loop`` trains with checkpoints that resume exactly. ``train(cfg, run_dir)`` is the
entry point; ``python -m nhr.train RUN_DIR`` (or ``accelerate launch -m nhr.train
RUN_DIR`` on several GPUs) trains with a run folder's saved config.
"""

from nhr.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
