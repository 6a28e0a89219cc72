"""BasicSR glue: the train and test pipelines with LKSMN registered (``pipeline``), verified resume (``resume``)
and the embedded demo (``demo``). The training model itself, ``LKSMNModel``, is in ``lksmn_arch.models``."""
