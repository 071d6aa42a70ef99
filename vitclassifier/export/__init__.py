"""The export layer: writing a checkpoint in the export formats, running those exports, and their files."""
