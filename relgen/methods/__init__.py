"""The built-in methods, one package each (config, method, artifact, losses, importer, checks).

They register through relgen's own plugin object (:mod:`relgen.builtins`), as a third party's
do through theirs; each ``config`` module is light (no torch) and registers its schema when
imported.
"""
