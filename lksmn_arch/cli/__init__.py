"""The console commands, one thin module each (argument parsing and messages over the package's functions):
``lksmn-train``, ``lksmn-test``, ``lksmn-prepare``, ``lksmn-demo``, ``lksmn-upscale``, ``lksmn-export``."""
