"""The library behind the commands train.py, predict.py, classifier.py, export.py and app.py.

Layers, each importing only from the ones above it in this list (project.md draws the map):
  errors, files, cli, devices, config   what every layer shares
  data/                                 image files, folders, transforms, batch augmentation, the audit
  model/                                the ViT wrapper, checkpoints, the runnable interface, export formats
  reporting/                            metrics, pictures, tables, calibration, experiment tracking
  training/  and  inference/            the recipe, loops and Trainer; loading any model form, prediction
  evaluation                            train.py --evaluate: inference's loader with training's evaluation
No library module imports a command.
"""
