"""Data: ShapesWorld and webdataset shards."""
