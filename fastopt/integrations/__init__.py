"""Plug-ins that register fastopt into mmengine's and mmcv 1.x's own registries.

Import ``fastopt.integrations.mmengine`` (or list it in a config's ``custom_imports``) and
set ``constructor='FastOptimWrapperConstructor'``; for mmcv 1.x, import
``fastopt.integrations.mmcv`` and set ``constructor='FastOptimizerConstructor'``.
"""
