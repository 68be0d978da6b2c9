"""The built-in model's training, in stages (the paper's order, in miniature).

Each stage is one command, writes its own checkpoint folder, measures its gate on held-out data
and writes its section of ``results/stages/report.md`` (``train.report``).
``scripts/reproduce_builtin.sh`` runs them in order; each stage's folder is the next one's input.

1. ``python -m train.stages.vl_pretrain``  vision tower + projector + LLM (the InternVL stand-in)
2. ``python -m train.stages.sam_pretrain`` promptable SAM2 with its memory (the SAM2 stand-in);
   run four times, each from the last one's weights (``--init``): the second phase tracks several
   objects a clip and clicks every frame, the third trains on the RVOS world's clips with example
   prompts, and stage 2d continues the third (``scripts/reproduce_builtin.sh``)
3. ``python -m train.stages.sa2va``        Sa2VA: one [SEG], stages 1 + 2, fine-tuned on RVOS
4. ``python -m train.stages.reviosa``      ReVIOSa: [SEG_ACT] / [SEG_TAR] + AML, from stage 3
5. ``python -m train.stages.ablation``     Table 4: four variants from stage 3, several seeds

``clips`` draws the pretraining stills and clips; ``vision_tower`` is stage 1's first phase;
``finetune`` is what stages 3-5 share; ``common`` the recipe's model geometry.
"""

STAGES = ("vl_pretrain", "sam_pretrain", "sa2va", "reviosa", "ablation")
