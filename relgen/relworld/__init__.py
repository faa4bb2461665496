"""relworld: the offline proving ground, in one place.

* :mod:`relgen.relworld.world`: the procedural world of coloured shapes in spatial relations and
  its language (scenes, captions, prompts, the pretraining stream, the methods' datasets);
* :mod:`relgen.relworld.detector`: the exact detector that scores generated images;
* :mod:`relgen.relworld.model`: the micro backbone's structure, its builders and writer;
  the pretrained weights ship in ``weights/`` (``backbone.pretrained: pkg://relgen.relworld/weights``);
* :mod:`relgen.relworld.datasets`: the ``relworld_*`` dataset options;
* :mod:`relgen.relworld.probes`: checks that a model can carry a method's effect;
* :mod:`relgen.relworld.bench`: the benchmark's library code. It runs methods, so nothing in
  this package's ``__init__`` imports it: ``backbone=relworld`` never pulls in the methods.
"""
