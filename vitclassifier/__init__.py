"""The library behind the commands train.py, predict.py, classifier.py, export.py and app.py.

Layers, each importing only from the ones above it in this list (project.md draws the map):
  errors, files, cli, devices, config   what every layer shares
  data/                                 image files, folders, transforms, the synthetic set, the audit
  model/                                the ViT wrapper, checkpoints, the runnable interface, export formats
  training/                             the recipe, the epoch loops, resume, the Trainer
  inference/                            loading any runnable form of a model, prediction
  reporting/                            pictures, tables, calibration, evaluation, tracking
"""
