r"""Writes benchmark_data.json (class names and templates of zero-shot sets, in TFDS label order).

    pip download clip_benchmark --no-deps -d /tmp/cb && unzip -o /tmp/cb/*.whl -d /tmp/cb
    # OpenAI CLIP's data/prompts.md (github.com/openai/CLIP), saved as /tmp/prompts.md
    python -m clip_jax.evaluation.make_benchmark_data --clip_benchmark=/tmp/cb/clip_benchmark/datasets \
        --openai_prompts=/tmp/prompts.md

Inputs (both MIT licensed): CLIP_benchmark 1.6.2's en_classnames.json and
en_zeroshot_classification_templates.json, and OpenAI CLIP's data/prompts.md.
The label order is TFDS's: each list is built from, or checked against, the
dataset's `ClassLabel` names in the installed tensorflow_datasets (read offline,
no data needed), and the script stops where a list and TFDS disagree.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile

from clip_jax.evaluation.benchmarks import DATA_FILE

# name -> (where the class names come from, CLIP_benchmark template set). Class name sources:
#   ("clip_benchmark", key): its list as is (checked against TFDS's names where TFDS has readable ones);
#   ("openai", section): the list of that section of prompts.md (TFDS names its labels only once prepared);
#   ("tfds", section): TFDS's label names made readable (readable() below), checked to be the same set
#     as prompts.md's section (whose order can differ from TFDS's).
SPECS: dict[str, tuple[tuple[str, str], str]] = {
    "caltech101": (("clip_benchmark", "caltech101_vtab"), "caltech101"),
    "cars196": (("tfds", "StanfordCars"), "cars"),
    "cifar10": (("openai", "CIFAR10"), "cifar10"),
    "cifar100": (("openai", "CIFAR100"), "cifar100"),
    "diabetic_retinopathy_detection": (("clip_benchmark", "diabetic_retinopathy"), "diabetic_retinopathy"),
    "dmlab": (("clip_benchmark", "dmlab"), "dmlab"),
    "dtd": (("tfds", "DescribableTextures"), "dtd"),
    "eurosat": (("clip_benchmark", "eurosat"), "eurosat"),
    "food101": (("tfds", "Food101"), "food101"),
    "imagenet2012": (("clip_benchmark", "imagenet1k"), "imagenet1k"),
    "mnist": (("clip_benchmark", "mnist"), "mnist"),
    "oxford_flowers102": (("clip_benchmark", "flowers"), "flowers"),
    "oxford_iiit_pet": (("clip_benchmark", "pets"), "pets"),
    "patch_camelyon": (("clip_benchmark", "pcam"), "pcam"),
    "resisc45": (("tfds", "RESISC45"), "resisc45"),
    "stl10": (("openai", "STL10"), "stl10"),
    "sun397": (("tfds", "SUN397"), "sun397"),
    "svhn_cropped": (("clip_benchmark", "svhn"), "svhn"),
}
# TFDS datasets labelled with imagenet2012's 1,000 WordNet ids in the same order.
IMAGENET_VARIANTS = ("imagenet_a", "imagenet_r", "imagenet_sketch", "imagenet_v2")


# TFDS label -> readable name pairs that share no word (checked by hand: the same class).
RENAMED = {
    "caltech101": {"faces_easy": "centered face"},
    "eurosat": {"HerbaceousVegetation": "brushland or shrubland"},
    "oxford_flowers102": {"ball moss": "air plant"},  # Tillandsia recurvata
}
_STOP_WORDS = {"a", "an", "and", "of", "or", "the"}


def words(name: str) -> set[str]:
    """Lower-case words of a label, camel case split, plural "s" dropped: "SeaLake" -> {"sea", "lake"}."""
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", re.sub(r"^/[a-z]/", "", name)).lower()
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in re.findall(r"[a-z0-9]+", name)} - _STOP_WORDS


def label_names_match(tfds_name: str, classname: str, dataset: str) -> bool:
    """Whether a readable class name stands for a TFDS label: the words of one contain the other's, or RENAMED."""
    if RENAMED.get(dataset, {}).get(tfds_name) == classname:
        return True
    a, b = words(tfds_name), words(classname)
    return bool(a and b) and (a <= b or b <= a)


def readable(tfds_name: str) -> str:
    """A TFDS label name as words: "apple_pie" -> "apple pie", sun397's "/a/apse/indoor" -> "apse indoor"."""
    if re.match(r"^/[a-z]/", tfds_name):  # sun397: /letter/category[/subcategory]
        tfds_name = tfds_name[3:].replace("/", " ")
    return tfds_name.replace("_", " ")


def openai_prompts(path: str) -> dict[str, list[str]]:
    """Section title -> class list of prompts.md."""
    out = {}
    for section in re.split(r"^## ", open(path).read(), flags=re.M)[1:]:
        code = re.search(r"```bash\n(.*?)```", section, re.S)
        if code:
            scope: dict = {}
            exec(code.group(1), {}, scope)  # two Python list literals, `classes` and `templates`
            out[section.split("\n", 1)[0].strip()] = scope["classes"]
    return out


def tfds_labels(name: str) -> list[str]:
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=tempfile.mkdtemp(), try_gcs=False).info.features["label"].names


def build(clip_benchmark_dir: str, prompts_path: str) -> dict:
    cb_names = json.load(open(os.path.join(clip_benchmark_dir, "en_classnames.json")))
    cb_templates = json.load(open(os.path.join(clip_benchmark_dir, "en_zeroshot_classification_templates.json")))
    openai = openai_prompts(prompts_path)
    datasets = {}
    for name, ((kind, key), template_key) in SPECS.items():
        labels = tfds_labels(name)
        if kind == "tfds":
            classnames = [readable(label) for label in labels]
            if sorted(classnames) != sorted(openai[key]):
                raise ValueError(f"{name}: TFDS's names differ from prompts.md's {key}")
            source = (
                "TFDS label names made readable ('_' as spaces; sun397: no '/x/' prefix, '/' as space), "
                f"the same {len(labels)} names as OpenAI's {key} list"
            )
        elif kind == "openai":
            classnames = openai[key]
            source = f"OpenAI CLIP data/prompts.md, {key}"
        else:
            classnames = cb_names[key]
            source = f"CLIP_benchmark en_classnames.json, {key}"
        if len(classnames) != len(labels):
            raise ValueError(f"{name}: {len(classnames)} class names, TFDS has {len(labels)} labels")
        if not labels[0].isdigit() and name != "imagenet2012":
            bad = [(t, c) for t, c in zip(labels, classnames) if not label_names_match(t, c, name)]
            if bad:
                raise ValueError(f"{name}: class names out of TFDS's order: {bad}")
        if name == "imagenet2012":
            templates: str | list[str] = "openai_imagenet"  # clip_jax.evaluation.templates
            source += "; templates: OpenAI's 80 ImageNet prompts"
        else:
            templates = [t.replace("{c}", "{}") for t in cb_templates[template_key]]
            source += f"; templates: CLIP_benchmark {template_key}"
        datasets[name] = {"classnames": classnames, "templates": templates, "source": source}
    for name in IMAGENET_VARIANTS:
        if tfds_labels(name) != tfds_labels("imagenet2012"):
            raise ValueError(f"{name}: labels differ from imagenet2012's")
        datasets[name] = {"same_as": "imagenet2012", "source": "imagenet2012's labels (all 1,000 WordNet ids)"}
    return {
        "about": "Zero-shot class names and prompt templates by TFDS dataset name, in TFDS label order. "
        "Sources (MIT licence): CLIP_benchmark 1.6.2 (github.com/LAION-AI/CLIP_benchmark) and OpenAI CLIP "
        "data/prompts.md (github.com/openai/CLIP). Generated by clip_jax/evaluation/make_benchmark_data.py.",
        "datasets": dict(sorted(datasets.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip_benchmark", required=True, help="CLIP_benchmark's clip_benchmark/datasets directory")
    parser.add_argument("--openai_prompts", required=True, help="OpenAI CLIP's data/prompts.md")
    parser.add_argument("--output", default=DATA_FILE)
    args = parser.parse_args()
    data = build(args.clip_benchmark, args.openai_prompts)
    with open(args.output, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(data['datasets'])} datasets to {args.output}")


if __name__ == "__main__":
    main()
