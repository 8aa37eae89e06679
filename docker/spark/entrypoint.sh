#!/bin/bash
# Entry point of tlpipe/spark. Spark on Kubernetes (the Kubeflow Spark Operator runs spark-submit in cluster mode)
# starts the driver pod with the arguments `driver <spark-submit args>` and each executor pod with `executor`,
# passing the executor's settings as SPARK_* environment variables; this mirrors the contract of Apache Spark's
# own kubernetes entrypoint for an image whose SPARK_HOME is the pip-installed pyspark. Anything else (the KFP
# step's command, `bash`, ...) is executed as given.
set -euo pipefail

spark_classpath="${SPARK_HOME}/jars/*${SPARK_EXTRA_CLASSPATH:+:${SPARK_EXTRA_CLASSPATH}}"

case "${1:-}" in
  driver)
    shift
    # In the driver pod spark-submit runs in client mode: the pod *is* the cluster-mode driver.
    exec "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client \
      "$@"
    ;;
  executor)
    shift
    # JVM options arrive as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... (in order).
    java_opts=()
    while IFS='=' read -r name _; do
      java_opts+=("${!name}")
    done < <(env | grep -E '^SPARK_JAVA_OPT_[0-9]+=' | sort -t_ -k4 -n)
    exec "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "${spark_classpath}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" \
      --executor-id "${SPARK_EXECUTOR_ID}" \
      --cores "${SPARK_EXECUTOR_CORES}" \
      --app-id "${SPARK_APPLICATION_ID}" \
      --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
      --podName "${SPARK_EXECUTOR_POD_NAME}" \
      "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
