"""Data: preparation of DF2K/DIV2K sub-images, LMDBs and benchmark pairs (``prepare``), the open-photos set and its
manifest (``open_photos``, ``open_photos.json``), scikit-image's sample photos (``sample_photos``) and the checks
of an option file's datasets (``dataset_checks``). BasicSR's own dataset classes read what these write."""
