"""The models shipped in the package (``models.json`` and the weight files beside it) and their registry
(``shipped``: ``default_model(scale)``)."""
