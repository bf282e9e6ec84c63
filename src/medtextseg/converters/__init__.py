"""Converters: public dataset layouts -> the medtextseg dataset format (``docs/dataset_format.md``)."""
