"""Training the segmenter: interactive fine-tuning of a promptable tool's prompt encoder + mask decoder on
simulated box + click sessions (``finetune``, configured by ``config``), its data, evaluation, curves,
embedding cache and the published adapted weights."""
