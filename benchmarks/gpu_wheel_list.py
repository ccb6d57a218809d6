"""The packages megadyt[bench] needs that a GPU image lacks, one pip requirement a line, for
benchmarks/gpu_wheelhouse.sh. The dependency closure is walked through this environment's
installed metadata (so the versions are the ones tested here); a requirement not installed
here is printed as setup.cfg states it.

    python benchmarks/gpu_wheel_list.py [--image-packages FILE]
"""

from __future__ import annotations

import argparse
import configparser
import importlib.metadata as metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# The lent GPU image's Python packages (2026-11): CUDA torch and the usual scientific stack.
IMAGE_PACKAGES = """
absl-py accelerate aiohappyeyeballs aiohttp aiosignal attrs certifi charset-normalizer click
cloudpickle cmake contourpy cuda-bindings cuda-pathfinder cycler einops filelock fonttools
frozenlist fsspec grpcio h11 hf-xet httpcore httpx huggingface-hub idna iniconfig jinja2 joblib
kiwisolver lxml markdown markupsafe matplotlib mpmath msgpack multidict networkx ninja numpy
nvidia-ml-py packaging pandas pillow pip pluggy portalocker propcache protobuf psutil pyarrow
py-cpuinfo pygments pyparsing pytest pytest-timeout python-dateutil pyyaml regex requests
safetensors sacrebleu scikit-learn scipy sentencepiece setuptools six sympy tabulate tensorboard
tensorboard-data-server threadpoolctl tokenizers torch tqdm transformers triton typing-extensions
urllib3 werkzeug wheel xxhash yarl zipp colorama typer shellingham rich mdurl markdown-it-py
annotated-doc anyio
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_requirements() -> list[Requirement]:
    """install_requires and the bench extra, from setup.cfg (the one place they are stated)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["bench"].splitlines()
    return [Requirement(x.strip()) for x in lines if x.strip() and not x.strip().startswith("#")]


def closure(requirements: list[Requirement], image: set[str]) -> list[str]:
    """Every requirement reachable from `requirements` that the image lacks, as name==version
    (or the requirement's own text when not installed here). The image's packages are not
    walked: their own dependencies are the image's business."""
    seen: set[str] = set()
    out: list[str] = []
    todo = list(requirements)
    while todo:
        req = todo.pop()
        key = canonical(req.name)
        if key in seen or key in image or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            out.append(str(req).split(";")[0])
            continue
        out.append(f"{dist.metadata['Name']}=={dist.version}")
        todo += [Requirement(r) for r in dist.requires or []]
    return sorted(out, key=str.lower)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-packages", help="file of the image's packages (pip freeze)")
    args = parser.parse_args()
    text = Path(args.image_packages).read_text() if args.image_packages else IMAGE_PACKAGES
    image = {canonical(re.split(r"[=<>@ ]", w)[0]) for w in text.split() if w}
    print("\n".join(closure(top_requirements(), image)))


if __name__ == "__main__":
    main()
