"""Training ReVIOSa models (imports ``reviosa``, never the other way round).

Layout:
- the loop and losses: ``config`` (typed configs, presets), ``data`` (clip items), ``model``
  (building, what trains), ``losses``, ``objective`` (one step's loss), ``loop`` (Trainer,
  checkpoints, export), ``evaluate`` (validation J&F), ``select_heads`` (the AML head protocol),
  ``report`` (the stages' report); ``python -m train {fit, select-heads, export}``;
- ``stages/``: the built-in model's stages, one command each (see ``train.stages``);
- ``probes/``: probes and diagnostics of a model's parts (``probe_sam``, ``probe_words``,
  ``diagnose``, ``baselines``);
- ``recipes/``: training configs (``stages.yaml``: the stages' model; ``builtin.yaml``: the
  previous one-run recipe); ``annotate/``: annotation tools.
"""
