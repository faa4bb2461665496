"""Exported file names: what each method's files are called, and how loaders find them by role."""

import json
from types import SimpleNamespace

import pytest

from relgen.errors import RelgenError
from relgen.names import export_file_name, exported_file, recorded_name


@pytest.mark.parametrize("args,name", [
    (("reversion", "<R>"), "reversion-R.safetensors"),
    (("textual_inversion", "<cat toy>"), "textual_inversion-cat_toy.safetensors"),
    (("rrnet", "a/b"), "rrnet-a_b.safetensors"),  # never a path outside the export folder
    (("relationbooth", "left of", "lora-kohya"), "relationbooth-left_of-lora-kohya.safetensors"),
    (("reversion", "<*>", "", ".safetensors", "token"), "reversion-token.safetensors"),
])
def test_export_file_names_carry_the_portable_token_or_relation(args, name):
    assert export_file_name(*args) == name


def test_loaders_read_the_recorded_name_and_the_old_fixed_one_for_older_exports(tmp_path):
    new = {"files": {"embeddings": "reversion-R.safetensors"}}
    assert exported_file(tmp_path, new, "embeddings", "learned_embeds.safetensors") == \
        tmp_path / "reversion-R.safetensors"
    old = {"files": ["learned_embeds.safetensors"]}  # what relgen.json held before the names were recorded
    assert exported_file(tmp_path, old, "embeddings", "learned_embeds.safetensors") == \
        tmp_path / "learned_embeds.safetensors"
    assert recorded_name(old, "embeddings", "learned_embeds.safetensors") == "learned_embeds.safetensors"
    assert recorded_name(old, "lora_kohya", "pytorch_lora_weights_kohya.safetensors") is None
    # no meta given: relgen.json in the folder is read; no relgen.json: the old fixed name
    assert exported_file(tmp_path, None, "network", "rrnet_gat.safetensors") == tmp_path / "rrnet_gat.safetensors"
    (tmp_path / "relgen.json").write_text(json.dumps({"files": {"network": "rrnet-place.safetensors"}}))
    assert exported_file(tmp_path, None, "network", "rrnet_gat.safetensors") == tmp_path / "rrnet-place.safetensors"
    # a role the record lacks: one line naming relgen.json (or None when the file is optional)
    with pytest.raises(RelgenError) as info:
        exported_file(tmp_path, None, "lora", "pytorch_lora_weights.safetensors")
    assert str(info.value) == (f"{tmp_path / 'relgen.json'}: 'files' records no 'lora' file (only network); "
                               "re-export the run")
    assert exported_file(tmp_path, None, "lora", "pytorch_lora_weights.safetensors", required=False) is None


def test_a_reversion_folder_without_its_recorded_file_names_it(tmp_path):
    from relgen.methods.reversion.method import ReVersion

    meta = {"method": "reversion", "method_config": {}, "files": {"embeddings": "reversion-R.safetensors"}}
    with pytest.raises(RelgenError, match=r"holds neither reversion-R\.safetensors \(a relgen export\) nor "
                                          r"learned_embeds\.bin"):
        ReVersion.load_artifact(tmp_path, meta)


@pytest.mark.parametrize("option,predicates,name", [
    (None, [["hugging"], ["hugging"]], "hugging"),
    (None, [["left", "of"]], "left_of"),
    (None, [["hugging"], ["shaking"]], "relation"),  # the items disagree
    (None, [["hugging"], None], "relation"),  # an item without a predicate (DreamRelation's shake data)
    ("hug", [["hugging"]], "hug"),  # method.relation_name wins
])
def test_relationbooth_files_are_named_after_the_shared_predicate(option, predicates, name):
    from relgen.methods.relationbooth.artifact import export_names
    from relgen.methods.relationbooth.method import RelationBooth

    method = SimpleNamespace(cfg=SimpleNamespace(relation_name=option),
                             data=[SimpleNamespace(predicate=p) for p in predicates])
    assert RelationBooth.relation_name(method) == name
    assert export_names(name) == {"lora": f"relationbooth-{name}-lora.safetensors",
                                  "lora_kohya": f"relationbooth-{name}-lora-kohya.safetensors",
                                  "image_branch": f"relationbooth-{name}-image-branch.safetensors"}
