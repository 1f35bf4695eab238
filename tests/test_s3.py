"""Plates in S3: ``dataset.path: s3://...`` read through Snakemake's storage plugin for S3.

The end-to-end tests start an S3-compatible server on 127.0.0.1 (moto's server mode), holding the tiny
config's plates laid out like the Cell Painting Gallery (``<project>/<source>/workspace/backend/<batch>/
<plate>/<plate>.sqlite``, the profiling recipe's platemaps under ``workspace/metadata/platemaps/<batch>/``).
Public buckets grant reads by ACL, as the Gallery does (moto refuses unsigned requests otherwise); a private
one takes credentials. The unit tests of the config checks need no server.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from cytoagg import config as cfg
from cytoagg.config import ConfigError, check_config, resolve_platemaps
from helpers import SCHEMA, TINY, copy_workflow, defaults, planned_jobs, snakemake

GALLERY = "cellpainting-gallery"
WORKSPACE = "cpg0016-jump/source_99/workspace"
BATCH = "2026_01_05_Batch1"
PLATES = ("P1", "P2", "P3")
PLATEMAP_NAME = "synthetic_platemap"


def plate_key(plate: str) -> str:
    return f"{WORKSPACE}/backend/{BATCH}/{plate}/{plate}.sqlite"


def s3_dataset(bucket: str, anonymous: bool) -> dict:
    base = f"s3://{bucket}/{WORKSPACE}"
    return {
        "path": f"s3://{bucket}/{plate_key('{plate}')}",
        "barcode_platemap": f"{base}/metadata/platemaps/{BATCH}/barcode_platemap.csv",
        "platemap_dir": f"{base}/metadata/platemaps/{BATCH}/platemap",
        "s3_anonymous": anonymous,
    }


# --- config checks (no server) ------------------------------------------------------------------


def config_with(dataset: dict, train=("P1", "P2"), validation=("P3",)) -> dict:
    """A config as the Snakefile checks it: the schema's defaults, these plates and dataset settings."""
    sections = yaml.safe_load(SCHEMA.read_text())["properties"]
    config = {name: defaults(name) for name, spec in sections.items() if spec.get("type") == "object" and name != "experiment"}
    config["results"] = sections["results"]["default"]
    config["plates"].update(train=list(train), validation=list(validation))
    config["dataset"].update(dataset)
    return config


def test_s3_locations_are_not_looked_for_on_disk():
    check_config(config_with(s3_dataset("some-bucket", anonymous=True)))  # no local file exists, no request made


@pytest.mark.parametrize(
    "key, url",
    [("path", "s3://{plate}/x.sqlite"), ("path", "s3://Bad_Bucket/{plate}.sqlite"), ("path", "s3://bucket{plate}"),
     ("path", "s3:///{plate}.sqlite"), ("platemap", "s3://bucket/")],
)
def test_s3_urls_must_name_a_bucket_and_a_path(key, url):
    with pytest.raises(ConfigError, match=f"dataset.{key}: .*is not s3://<bucket>/<path>"):
        check_config(config_with({"path": "s3://bucket/{plate}.sqlite", key: url}))


def test_s3_without_the_plugin_says_what_to_install(monkeypatch):
    monkeypatch.setattr(cfg, "S3_PLUGIN", "no_such_storage_plugin_here")
    with pytest.raises(ConfigError, match=r"dataset.path is an S3 location.*pip install 'cytoagg\[s3\]'"):
        check_config(config_with({"path": "s3://bucket/{plate}.sqlite"}))


def test_platemaps_in_s3_resolve_per_plate_with_one_fetch_and_one_check_per_platemap(tmp_path):
    barcode = tmp_path / "barcode_platemap.csv"
    barcode.write_text("Assay_Plate_Barcode,Plate_Map_Name\nP1,mapA\nP2,mapB\nP3,mapA\n")
    fetched, checked = [], []
    present = {"s3://b/maps/mapA.txt", "s3://b/maps/mapB.csv"}

    def local_copy(url):
        fetched.append(url)
        return str(barcode)

    def exists(url):
        checked.append(url)
        return url in present

    dataset = {"barcode_platemap": "s3://b/barcode_platemap.csv", "platemap_dir": "s3://b/maps/", "platemap": None}
    got = resolve_platemaps(dataset, ["P1", "P2", "P3"], exists, local_copy)
    assert got == {"P1": "s3://b/maps/mapA.txt", "P2": "s3://b/maps/mapB.csv", "P3": "s3://b/maps/mapA.txt"}
    assert fetched == ["s3://b/barcode_platemap.csv"]
    assert checked == ["s3://b/maps/mapA.txt", "s3://b/maps/mapB.txt", "s3://b/maps/mapB.csv"]  # per name, not per plate

    present.clear()
    with pytest.raises(ConfigError, match=r"dataset.platemap_dir: no platemap file mapA\.txt\|\.csv\|\.tsv in s3://b/maps/"):
        resolve_platemaps(dataset, ["P1"], exists, local_copy)
    # one platemap for all plates: its URL, checked by Snakemake with the plates
    assert resolve_platemaps({"barcode_platemap": None, "platemap_dir": None, "platemap": "s3://b/pm.txt"},
                             ["P1", "P2"], exists, local_copy) == {"P1": "s3://b/pm.txt", "P2": "s3://b/pm.txt"}


def test_plates_in_s3_are_found_by_one_listing():
    config = config_with({"path": "s3://b/backend/batch/{plate}/{plate}.sqlite", "platemap": "s3://b/pm.txt"},
                         train=("P1", "P2"), validation=("P3",))
    objects = [(f"s3://b/backend/batch/{p}/{p}{ext}", 10 + i) for i, p in enumerate(("P1", "P2", "P3", "P4"))
               for ext in (".csv", ".sqlite")]
    listed, asked = [], []

    def list_objects(prefix):
        listed.append(prefix)
        yield from objects

    def exists(url):
        asked.append(url)
        return url == "s3://b/pm.txt"

    sizes = cfg.check_plates_in_s3(config, list_objects, exists)
    assert listed == ["s3://b/backend/batch/"] and asked == ["s3://b/pm.txt"]  # no request per plate
    assert sizes == {f"s3://b/backend/batch/{p}/{p}.sqlite": 10 + i for i, p in enumerate(("P1", "P2", "P3"))}

    config["plates"]["validation"] = ["P3", "P9"]
    with pytest.raises(ConfigError, match=r"plates.validation: plate 'P9' not found: s3://b/backend/batch/P9/P9.sqlite does not exist"):
        cfg.check_plates_in_s3(config, list_objects, exists)
    config["plates"]["validation"] = ["P3"]
    config["dataset"]["platemap"] = "s3://b/other.txt"
    with pytest.raises(ConfigError, match="dataset.platemap: s3://b/other.txt does not exist"):
        cfg.check_plates_in_s3(config, list_objects, exists)


def test_a_listing_of_much_else_stops_and_asks_plate_by_plate(monkeypatch):
    monkeypatch.setattr(cfg, "LISTED_KEYS_PER_PLATE", 0)  # budget: 1,000 objects
    config = config_with({"path": "s3://b/{plate}.sqlite"}, train=("P1", "P2"), validation=())
    many = ((f"s3://b/image{i:05d}.tiff", 1) for i in range(100_000))
    seen = []

    def list_objects(prefix):
        for item in many:
            seen.append(item)
            yield item

    asked = []
    assert cfg.check_plates_in_s3(config, list_objects, lambda url: asked.append(url) or True) == {}
    assert len(seen) == 1000 and asked == ["s3://b/P1.sqlite", "s3://b/P2.sqlite"]


# --- a local S3 server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a free port), and a boto3 client of it."""
    pytest.importorskip("snakemake_storage_plugin_s3", reason="the s3 extra: pip install -e '.[s3]'")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] (the test extra)")
    import boto3

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="admin", aws_secret_access_key="admin")
    yield SimpleNamespace(url=url, client=client)
    server.stop()


def test_storage_objects_ask_existence_and_size_once_per_url(s3, tmp_path):
    """Snakemake asks every waiting job's inputs in each scheduling round (cytoagg.io.storage): one HEAD each."""
    import logging

    import snakemake_storage_plugin_s3 as plugin

    from cytoagg.io.storage import ask_existence_and_size_once

    ask_existence_and_size_once()
    s3.client.create_bucket(Bucket="counted")
    s3.client.put_object(Bucket="counted", Key="plates/a.sqlite", Body=b"12345")
    settings = plugin.StorageProviderSettings(endpoint_url=s3.url, access_key="a", secret_key="b")
    provider = plugin.StorageProvider(logger=logging.getLogger(__name__), local_prefix=tmp_path, settings=settings)
    heads = []
    provider.s3c.meta.client.meta.events.register("before-send.s3.HeadObject", lambda **_: heads.append(1))
    for _ in range(3):  # a storage object per job, asked in round after round
        obj = provider.object("s3://counted/plates/a.sqlite")
        assert obj.exists() and obj.size() == 5 and obj.exists() and obj.size() == 5
    assert len(heads) == 2  # existence, size
    missing = provider.object("s3://counted/plates/b.sqlite")
    assert not missing.exists() and not missing.exists()
    assert len(heads) == 4  # a missing object is asked again: it may appear


def upload_screen(s3, bucket: str, public: bool, plate_file, platemap_file, plates=PLATES) -> None:
    """A screen laid out like a Gallery dataset, with the files the Gallery keeps beside each plate (its
    aggregated CSV, the load_data CSVs): ``plate_file(plate)`` and ``platemap_file`` are local files."""
    acl = {"ACL": "public-read"} if public else {}
    s3.client.create_bucket(Bucket=bucket, **acl)
    base = f"{WORKSPACE}/metadata/platemaps/{BATCH}"
    for plate in plates:
        s3.client.upload_file(str(plate_file(plate)), bucket, plate_key(plate), ExtraArgs=acl)
        for key in (f"{WORKSPACE}/backend/{BATCH}/{plate}/{plate}.csv", f"{WORKSPACE}/load_data_csv/{BATCH}/{plate}/load_data.csv"):
            s3.client.put_object(Bucket=bucket, Key=key, Body=b"Metadata_Plate\n" + plate.encode() + b"\n", **acl)
    barcodes = "Assay_Plate_Barcode,Plate_Map_Name\n" + "".join(f"{p},{PLATEMAP_NAME}\n" for p in plates)
    s3.client.put_object(Bucket=bucket, Key=f"{base}/barcode_platemap.csv", Body=barcodes.encode(), **acl)
    s3.client.upload_file(str(platemap_file), bucket, f"{base}/platemap/{PLATEMAP_NAME}.txt", ExtraArgs=acl)


@pytest.fixture(scope="module")
def gallery(s3, tiny_reference_run):
    """The reference run's raw plates and platemap in a public bucket, read anonymously as the Gallery is."""
    raw = tiny_reference_run / "results" / "synthetic"
    upload_screen(s3, GALLERY, True, lambda p: raw / "plates" / f"{p}.sqlite", raw / "platemap" / f"{PLATEMAP_NAME}.txt")
    return s3


@pytest.fixture(scope="module")
def placeholders(s3, tmp_path_factory):
    """Placeholder plates (dry runs and failed starts read no plate) in a public and in a private bucket."""
    folder = tmp_path_factory.mktemp("placeholders")
    (folder / "plate.sqlite").write_bytes(b"SQLite format 3\x00")
    (folder / "platemap.txt").write_text("well_position\tbroad_sample\nA01\tDMSO\n")
    for bucket, public in (("open-screens", True), ("lab-screens", False)):
        upload_screen(s3, bucket, public, lambda p: folder / "plate.sqlite", folder / "platemap.txt")
    return s3


def s3_environment(mp: pytest.MonkeyPatch, s3, home: Path, **variables: str) -> None:
    """Only the credentials a test gives: none from this machine's environment or ~/.aws."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "SNAKEMAKE_STORAGE_S3_")):
            mp.delenv(name)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-credentials"))
    mp.setenv("AWS_CONFIG_FILE", str(home / "no-config"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata lookups
    mp.setenv("SNAKEMAKE_STORAGE_S3_ENDPOINT_URL", s3.url)  # the plugin's setting, from its environment variable
    for name, value in variables.items():
        mp.setenv(name, value)


def s3_workflow(dest: Path, dataset: dict, plates=PLATES) -> Path:
    """A copy of the workflow whose tiny config reads its plates from S3 (tiny.yaml is the config the helpers pass)."""
    wd = copy_workflow(dest)
    tiny = yaml.safe_load(TINY.read_text())
    tiny["dataset"] = dataset
    tiny["plates"] = {"train": list(plates[:2]), "validation": list(plates[2:])}
    (wd / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return wd


# --- end to end ---------------------------------------------------------------------------------


# What S3 changes is where the plates come from: the run goes as far as every normalized plate and the features
# chosen on the training plates (everything after reads those files alone, as in a local run).
S3_TARGETS = (*(f"results/normalized/{p}.parquet" for p in PLATES), "results/features.txt")


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, gallery):
    """The tiny config run, to its normalized plates and features, with every plate (and platemap) read
    anonymously from the public bucket."""
    wd = s3_workflow(tmp_path_factory.mktemp("s3run"), s3_dataset(GALLERY, anonymous=True))
    with pytest.MonkeyPatch.context() as mp:
        s3_environment(mp, gallery, wd)
        proc = snakemake(wd, "--cores", "2", *S3_TARGETS)
    return wd, proc.stdout + proc.stderr


@pytest.mark.slow
def test_tiny_config_from_s3_equals_the_local_run(s3_run, tiny_reference_run):
    wd, _ = s3_run
    for step in ("ingested", "normalized"):
        for plate in PLATES:
            rel = f"results/{step}/{plate}.parquet"
            pd.testing.assert_frame_equal(pd.read_parquet(wd / rel), pd.read_parquet(tiny_reference_run / rel),
                                          check_exact=True)
    assert (wd / "results/features.txt").read_text() == (tiny_reference_run / "results/features.txt").read_text()


@pytest.mark.slow
def test_each_plate_is_fetched_once_by_its_job_and_its_copy_removed(s3_run):
    wd, log = s3_run
    for plate in PLATES:
        url = re.escape(f"s3://{GALLERY}/{plate_key(plate)}")
        assert len(re.findall(rf"^Retrieving from storage: {url}$", log, re.M)) == 1, plate
        assert len(re.findall(rf"^Removing local copy of storage file: {url}", log, re.M)) == 1, plate
    left = sorted(str(p.relative_to(wd)) for p in (wd / ".snakemake" / "storage").rglob("*") if p.is_file())
    # only barcode_platemap.csv stays: the Snakefile reads it while parsed, to know each plate's platemap
    assert left == [f".snakemake/storage/s3/{GALLERY}/{WORKSPACE}/metadata/platemaps/{BATCH}/barcode_platemap.csv"]


@pytest.mark.slow
def test_reruns_follow_the_objects_in_s3(s3_run, gallery):
    wd, _ = s3_run
    with pytest.MonkeyPatch.context() as mp:
        s3_environment(mp, gallery, wd)
        assert planned_jobs(wd, *S3_TARGETS) == {}
        # a newer object in the bucket (a re-uploaded plate) reruns that plate's chain only
        source = gallery.client.get_object(Bucket=GALLERY, Key=plate_key("P3"))["Body"].read()
        gallery.client.put_object(Bucket=GALLERY, Key=plate_key("P3"), Body=source, ACL="public-read")
        jobs = planned_jobs(wd, *S3_TARGETS)
    assert jobs == {"ingest": 1, "normalize": 1}  # P3, a validation plate: not in the feature selection


@pytest.mark.slow
def test_remote_jobs_read_their_plates_from_s3(tmp_path, gallery, tiny_reference_run):
    """Each job submitted to a cluster runs snakemake again for itself (as under Slurm): the cluster-generic
    executor runs those job scripts here. The plugin's settings and the anonymous access reach each job."""
    pytest.importorskip("snakemake_executor_plugin_cluster_generic", reason="the test extra")
    wd = s3_workflow(tmp_path, s3_dataset(GALLERY, anonymous=True))
    targets = [f"results/ingested/{p}.parquet" for p in PLATES]
    with pytest.MonkeyPatch.context() as mp:
        s3_environment(mp, gallery, tmp_path)
        proc = snakemake(wd, "--executor", "cluster-generic", "--cluster-generic-submit-cmd", "bash", "--jobs", "3",
                         *targets)
    log = proc.stdout + proc.stderr
    assert "3 of 3 steps (100%) done" in log
    for plate in PLATES:  # fetched onto the shared filesystem by snakemake, before it submits the job
        assert f"Retrieving from storage: s3://{GALLERY}/{plate_key(plate)}" in log
    assert log.count("--target-jobs ingest:plate=") == 3  # three job scripts, each its own snakemake
    for plate in PLATES:
        pd.testing.assert_frame_equal(pd.read_parquet(wd / "results/ingested" / f"{plate}.parquet"),
                                      pd.read_parquet(tiny_reference_run / "results/ingested" / f"{plate}.parquet"))


# --- credentials and failures (dry runs and failed starts) --------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "credentials, anonymous, outcome",
    [
        ({"SNAKEMAKE_STORAGE_S3_ACCESS_KEY": "lab", "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "secret"}, False, "planned"),
        ({"AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": "secret"}, False, "planned"),
        ({}, False, "Unable to locate credentials"),
        ({}, True, "Forbidden"),  # unsigned requests to a private bucket
    ],
)
def test_private_bucket_takes_the_plugins_credentials(tmp_path, placeholders, credentials, anonymous, outcome):
    wd = s3_workflow(tmp_path, s3_dataset("lab-screens", anonymous=anonymous))
    with pytest.MonkeyPatch.context() as mp:
        s3_environment(mp, placeholders, tmp_path, **credentials)
        proc = snakemake(wd, "-n", "--quiet", "rules", check=False)
    log = proc.stdout + proc.stderr
    if outcome == "planned":
        assert proc.returncode == 0, log[-3000:]
        assert re.search(r"^ingest\s+3$", log, re.M), log[-3000:]
    else:
        assert proc.returncode != 0 and outcome in log, log[-3000:]


@pytest.mark.slow
def test_a_plate_missing_from_the_bucket_stops_the_run_before_any_job(tmp_path, placeholders):
    """As a missing local file does, also where the other plates' results exist (Snakemake alone would keep
    those results and plan nothing for the missing plate)."""
    dataset = s3_dataset("open-screens", anonymous=True)
    # one platemap for every plate (dataset.platemap), here in S3 too
    dataset["platemap"] = f"{dataset.pop('platemap_dir')}/{PLATEMAP_NAME}.txt"
    del dataset["barcode_platemap"]
    wd = s3_workflow(tmp_path, dataset, plates=("P1", "P2", "P3", "P9"))
    with pytest.MonkeyPatch.context() as mp:
        s3_environment(mp, placeholders, tmp_path)
        proc = snakemake(wd, "--cores", "1", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    url = f"s3://open-screens/{plate_key('P9')}"
    assert f"config key plates.validation: plate 'P9' not found: {url} does not exist (dataset.path)" in log, log[-3000:]
    assert not (wd / "results").exists()
