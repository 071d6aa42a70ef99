"""The data layer: image files in, uint8 pixels and labels out."""
