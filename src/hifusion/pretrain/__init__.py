"""Self-supervised pretraining of image encoders on unlabelled H&E tiles (`hifusion pretrain`, benchmark step).

`tiles` gathers tiles at one physical scale (patch cache sections, extra slides), `views` makes the augmented
views, `loop` runs the objective from `models.ssl` with exact resume and a time budget, and `folds` runs it once
per benchmark split on the images that split may see. This layer sits beside `train` and `predict` (it uses the
slide reader and tissue rule of `predict`, no Lightning); `evaluate` and `cli` call it.
"""
