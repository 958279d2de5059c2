"""A tiny stand-in for the parts of icefall's ``icefall`` package that the demo recipes use.

The real icefall needs k2 and lhotse and is not on any package index. The demo
recipes under ``egs/`` import ``icefall.checkpoint`` and ``icefall.utils`` the
way icefall's ``export-for-ncnn.py`` scripts do; these modules keep icefall's
function names, behaviour and error messages for that code path only.
"""
