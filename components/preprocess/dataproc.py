"""Yandex Data Proc backend: create a cluster (or use one), run the PySpark job, stream status, delete the cluster.

Credentials come from the environment only (in the cluster: a Kubernetes Secret):
  YC_SERVICE_ACCOUNT_KEY       JSON of a service-account authorized key (`yc iam key create --output key.json`)
  YC_SERVICE_ACCOUNT_KEY_FILE  path of that JSON file, or
  YC_IAM_TOKEN                 a short-lived IAM token.
The job reads and writes S3 with the S3_* / AWS_* variables, which are passed to driver and executors as
Spark job properties (spark.yarn.appMasterEnv.* and spark.executorEnv.*); they are never logged.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from tlpipe.components.common.log import get_logger
from tlpipe.components.preprocess import job, remote
from tlpipe.components.preprocess.params import check_options

log = get_logger("preprocess.dataproc")

ENV_SA_KEY, ENV_SA_KEY_FILE, ENV_IAM_TOKEN = "YC_SERVICE_ACCOUNT_KEY", "YC_SERVICE_ACCOUNT_KEY_FILE", "YC_IAM_TOKEN"
# Python packages the job needs on the cluster nodes (Data Proc's `pip:` cluster properties install them).
DEFAULT_PIP = {"minio": "7.2.20", "pillow": "11.3.0", "google-crc32c": "1.7.1", "pyarrow": "17.0.0"}


class DataprocError(RuntimeError):
    """Data Proc refused a request, or the job failed or timed out."""


@dataclass(frozen=True)
class DataprocOptions:
    """spark_options of the `dataproc` backend (every key documented in components/preprocess/README.md)."""

    folder_id: str = ""
    cluster_id: str = ""  # an existing cluster: used as is and never deleted
    zone: str = "ru-central1-a"
    subnet_id: str = ""
    service_account_id: str = ""
    bucket: str = ""  # the cluster's bucket for logs and temporary data
    image_version: str = "2.1"
    ssh_public_key: str = ""
    security_group_ids: tuple = ()
    master_preset: str = "s3-c2-m8"
    master_disk_gb: int = 40
    compute_preset: str = "s3-c4-m16"
    compute_hosts: int = 2
    compute_disk_gb: int = 64
    disk_type: str = "network-ssd"
    pip_packages: dict = field(default_factory=lambda: dict(DEFAULT_PIP))
    job_properties: dict = field(default_factory=dict)
    staging_uri: str = ""  # where job file and code zip go; default s3://<output bucket>/tlpipe-staging/preprocess
    api_endpoint: str = "api.cloud.yandex.net"
    root_certificates: str = ""  # PEM file to trust instead of the system roots (private endpoints)
    operation_timeout_s: float = 1800
    job_timeout_s: float = 6 * 3600
    poll_interval_s: float = 10
    keep_cluster: bool = False  # do not delete a cluster this step created (debugging)

    @classmethod
    def from_dict(cls, options: dict) -> DataprocOptions:
        check_options(options, {f.name for f in fields(cls)}, "dataproc")
        opts = cls(**{**options, "security_group_ids": tuple(options.get("security_group_ids", ()))})
        if not opts.cluster_id and not (opts.folder_id and opts.subnet_id and opts.service_account_id):
            raise ValueError("spark_options for 'dataproc' need either cluster_id (an existing cluster) or "
                             "folder_id, subnet_id and service_account_id (to create one)")
        return opts


def credentials_from_env(env=None) -> dict:
    """yandexcloud.SDK keyword arguments from YC_SERVICE_ACCOUNT_KEY[_FILE] or YC_IAM_TOKEN."""
    env = os.environ if env is None else env
    if env.get(ENV_SA_KEY_FILE):
        raw, source = Path(env[ENV_SA_KEY_FILE]).read_text(), ENV_SA_KEY_FILE
    elif env.get(ENV_SA_KEY):
        raw, source = env[ENV_SA_KEY], ENV_SA_KEY
    elif env.get(ENV_IAM_TOKEN):
        return {"iam_token": env[ENV_IAM_TOKEN]}
    else:
        raise DataprocError(f"no Yandex Cloud credentials: set {ENV_SA_KEY} (key JSON), {ENV_SA_KEY_FILE} or "
                            f"{ENV_IAM_TOKEN} (from a Secret, never in parameters)")
    try:
        key = json.loads(raw)
        return {"service_account_key": {k: key[k] for k in ("id", "service_account_id", "private_key")}}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataprocError(f"{source} is not a service-account key JSON with id, service_account_id and "
                            f"private_key ({type(exc).__name__})") from None


def make_sdk(opts: DataprocOptions):
    import yandexcloud

    extra = {"root_certificates": Path(opts.root_certificates).read_bytes()} if opts.root_certificates else {}
    return yandexcloud.SDK(endpoint=opts.api_endpoint, user_agent="tlpipe-preprocess", **credentials_from_env(),
                           **extra)


def _grpc_message(exc) -> str:
    return f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)


def create_cluster(sdk, opts: DataprocOptions, name: str):
    """Ask for a cluster; returns (its id, the create operation). A refused request raises DataprocError."""
    import grpc
    from yandex.cloud.dataproc.v1 import cluster_pb2, cluster_service_pb2, common_pb2, subcluster_pb2
    from yandex.cloud.dataproc.v1.cluster_service_pb2_grpc import ClusterServiceStub

    def subcluster(sub_name, role, preset, disk_gb, hosts):
        return cluster_service_pb2.CreateSubclusterConfigSpec(
            name=sub_name, role=role, subnet_id=opts.subnet_id, hosts_count=hosts,
            resources=common_pb2.Resources(resource_preset_id=preset, disk_type_id=opts.disk_type,
                                           disk_size=disk_gb * 1024**3))

    request = cluster_service_pb2.CreateClusterRequest(
        folder_id=opts.folder_id, name=name, description="tlpipe preprocess (ephemeral)", zone_id=opts.zone,
        service_account_id=opts.service_account_id, bucket=opts.bucket, labels={"app": "tlpipe", "step": "preprocess"},
        security_group_ids=list(opts.security_group_ids),
        config_spec=cluster_service_pb2.CreateClusterConfigSpec(
            version_id=opts.image_version,
            hadoop=cluster_pb2.HadoopConfig(
                services=[cluster_pb2.HadoopConfig.Service.SPARK, cluster_pb2.HadoopConfig.Service.YARN],
                ssh_public_keys=[opts.ssh_public_key] if opts.ssh_public_key else [],
                properties={f"pip:{pkg}": version for pkg, version in opts.pip_packages.items()}),
            subclusters_spec=[
                subcluster("master", subcluster_pb2.Role.MASTERNODE, opts.master_preset, opts.master_disk_gb, 1),
                subcluster("compute", subcluster_pb2.Role.COMPUTENODE, opts.compute_preset, opts.compute_disk_gb,
                           opts.compute_hosts)]))
    log.info("creating Data Proc cluster %s in folder %s (%d x %s)", name, opts.folder_id, opts.compute_hosts,
             opts.compute_preset)
    try:
        operation = sdk.client(ClusterServiceStub).Create(request)
    except grpc.RpcError as exc:
        raise DataprocError(f"Data Proc refused to create cluster {name!r} in folder {opts.folder_id}: "
                            f"{_grpc_message(exc)}") from None
    meta = cluster_service_pb2.CreateClusterMetadata()
    operation.metadata.Unpack(meta)
    log.info("cluster %s: create operation %s started", meta.cluster_id, operation.id)
    return meta.cluster_id, operation


def wait_cluster(sdk, cluster_id: str, operation, opts: DataprocOptions) -> None:
    """Wait until the cluster runs; DataprocError if it fails to start (it still exists and must be deleted)."""
    from yandex.cloud.dataproc.v1 import cluster_pb2, cluster_service_pb2
    from yandexcloud.operations import OperationError

    try:
        sdk.wait_operation_and_get_result(operation, response_type=cluster_pb2.Cluster,
                                          meta_type=cluster_service_pb2.CreateClusterMetadata,
                                          timeout=opts.operation_timeout_s, logger=log)
    except OperationError as exc:
        raise DataprocError(f"cluster {cluster_id} failed to start: {exc}") from None
    log.info("cluster %s is running", cluster_id)


def delete_cluster(sdk, cluster_id: str, opts: DataprocOptions) -> None:
    from yandex.cloud.dataproc.v1 import cluster_service_pb2
    from yandex.cloud.dataproc.v1.cluster_service_pb2_grpc import ClusterServiceStub

    log.info("deleting cluster %s", cluster_id)
    operation = sdk.client(ClusterServiceStub).Delete(cluster_service_pb2.DeleteClusterRequest(cluster_id=cluster_id))
    sdk.wait_operation_and_get_result(operation, meta_type=cluster_service_pb2.DeleteClusterMetadata,
                                      timeout=opts.operation_timeout_s, logger=log)
    log.info("cluster %s deleted", cluster_id)


def submit_job(sdk, cluster_id: str, config: job.JobConfig, opts: DataprocOptions, main_uri: str,
               zip_uri: str) -> str:
    """Start the PySpark job; returns its id."""
    from yandex.cloud.dataproc.v1 import job_pb2, job_service_pb2
    from yandex.cloud.dataproc.v1.job_service_pb2_grpc import JobServiceStub

    env = remote.s3_env()
    properties = {"spark.submit.deployMode": "cluster",
                  **{f"spark.yarn.appMasterEnv.{k}": v for k, v in env.items()},
                  **{f"spark.executorEnv.{k}": v for k, v in env.items()}, **opts.job_properties}
    request = job_service_pb2.CreateJobRequest(
        cluster_id=cluster_id, name="tlpipe-preprocess",
        pyspark_job=job_pb2.PysparkJob(main_python_file_uri=_s3a(main_uri), python_file_uris=[_s3a(zip_uri)],
                                       args=remote.job_arguments(config), properties=properties))
    operation = sdk.client(JobServiceStub).Create(request)
    meta = job_service_pb2.CreateJobMetadata()
    operation.metadata.Unpack(meta)
    log.info("cluster %s: job %s submitted (%s)", cluster_id, meta.job_id, main_uri)
    return meta.job_id


def _s3a(uri: str) -> str:
    """Data Proc reads job files through Hadoop's S3A connector."""
    return "s3a://" + uri.removeprefix("s3://")


def wait_job(sdk, cluster_id: str, job_id: str, opts: DataprocOptions) -> None:
    """Poll the job, log each status change and its driver output; raise DataprocError unless it ends DONE."""
    from yandex.cloud.dataproc.v1 import job_pb2, job_service_pb2
    from yandex.cloud.dataproc.v1.job_service_pb2_grpc import JobServiceStub

    jobs = sdk.client(JobServiceStub)
    deadline = time.monotonic() + opts.job_timeout_s
    status, page_token, tail = None, "", []
    while True:
        current = jobs.Get(job_service_pb2.GetJobRequest(cluster_id=cluster_id, job_id=job_id))
        while True:  # stream the driver output written since the last poll
            page = jobs.ListLog(job_service_pb2.ListJobLogRequest(cluster_id=cluster_id, job_id=job_id,
                                                                   page_token=page_token))
            for line in page.content.splitlines():
                log.info("[job %s] %s", job_id, line)
                tail = (tail + [line])[-30:]
            if not page.next_page_token or page.next_page_token == page_token:
                break
            page_token = page.next_page_token
        if current.status != status:
            status = current.status
            log.info("job %s: %s", job_id, job_pb2.Job.Status.Name(status))
        if status == job_pb2.Job.DONE:
            return
        if status in (job_pb2.Job.ERROR, job_pb2.Job.CANCELLED):
            raise DataprocError(f"Data Proc job {job_id} on cluster {cluster_id} ended "
                                f"{job_pb2.Job.Status.Name(status)}; last driver output:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            jobs.Cancel(job_service_pb2.CancelJobRequest(cluster_id=cluster_id, job_id=job_id))
            raise DataprocError(f"Data Proc job {job_id} did not finish within {opts.job_timeout_s:.0f} s; cancelled")
        time.sleep(opts.poll_interval_s)


def run_job(config: job.JobConfig, opts: DataprocOptions) -> None:
    """Stage the code, run the job on Data Proc and delete the cluster this call created (also on failure)."""
    sdk = make_sdk(opts)
    main_uri, zip_uri = remote.stage_code(opts.staging_uri or remote.default_staging(config.output))
    created = None
    try:
        with remote.sigterm_unwinds():  # a cancelled step still deletes its cluster
            cluster_id = opts.cluster_id
            if not cluster_id:
                created, operation = create_cluster(sdk, opts, f"tlpipe-preprocess-{uuid.uuid4().hex[:8]}")
                cluster_id = created  # from here on, `finally` deletes it
                wait_cluster(sdk, cluster_id, operation, opts)
            wait_job(sdk, cluster_id, submit_job(sdk, cluster_id, config, opts, main_uri, zip_uri), opts)
    finally:
        if created and not opts.keep_cluster:
            delete_cluster(sdk, created, opts)
        elif created:
            log.warning("keeping cluster %s (keep_cluster=true): delete it when done", created)
