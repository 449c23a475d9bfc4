"""fastopt's tools, beside the runtime: what a training job never imports.

``sources`` (what a command's SOURCE names: configs, shipped configs, model factories, zoo
names), ``check`` (parity of one config against the reference), ``explain`` (why each
parameter got its hyperparameters), ``bench`` (construction and step benchmarks), ``cli``
(the ``fastopt`` command), ``schedule`` (learning-rate curves) and ``zoo`` (the bundled
models). The runtime core (``fastopt`` and its other modules) imports none of them;
``fastopt.explain``, ``fastopt.load_model`` and ``fastopt.load_config`` load them on first use.
"""
