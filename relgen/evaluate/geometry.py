"""Box rules shared by the detectors that judge a spatial relation: which geometry a detector
reports for "A ? B" and which geometries satisfy a prompted relation."""

#: Relations the detector can report for "A ? B" (``contains`` = B inside A).
GEOMETRIES = ("above", "below", "left_of", "right_of", "on_top_of", "inside", "contains")

#: Which detected geometries satisfy a prompted relation. "A above B" also holds when A rests
#: on B; "A below B" also when B rests on A (the detector reports that as ``below``).
SATISFIES: dict[str, frozenset[str]] = {
    "above": frozenset({"above", "on_top_of"}),
    "below": frozenset({"below"}),
    "left_of": frozenset({"left_of"}),
    "right_of": frozenset({"right_of"}),
    "on_top_of": frozenset({"on_top_of"}),
    "inside": frozenset({"inside"}),
}
