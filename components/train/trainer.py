"""The models of one stage run: the classifier it saves, the compiled model `fit()` trains, its evaluation.

train_frozen and train_scratch build the classifier (scratch: backbone trainable, BatchNorm in training mode);
finetune loads the frozen-stage model and unfreezes its last `unfreeze_layers` non-BN backbone layers. The
fitted model is the head alone on cached features, else the classifier (behind the augmentation layers).
"""

from __future__ import annotations

from tlpipe.components.common import model_artifact
from tlpipe.components.common.log import get_logger
from tlpipe.components.train import data
from tlpipe.components.train import model as modellib
from tlpipe.components.train.features import StageData
from tlpipe.components.train.params import TOP_K, TrainParams, feature_cache_views

log = get_logger("train")


def distribution():
    """MirroredStrategy + mixed precision when GPUs are visible, else the default (CPU) strategy."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
        log.info("%d GPU(s): MirroredStrategy, mixed_float16", len(gpus))
        return tf.distribute.MirroredStrategy()
    log.info("no GPU: CPU training, float32")
    return tf.distribute.get_strategy()


def stage_classifier(stage: str, params: TrainParams, num_classes: int, image_size: int, frozen_model_dir=None):
    """The image -> class probabilities model a stage starts from."""
    if stage == "finetune":
        classifier = model_artifact.load_model(frozen_model_dir)
        unfrozen = modellib.unfreeze_last(classifier, params.unfreeze_layers)
        log.info("fine-tuning %d backbone layers: %s .. %s", len(unfrozen), unfrozen[:1], unfrozen[-1:])
        return classifier
    classifier = modellib.build_classifier(
        num_classes, image_size, backbone=params.backbone, weights=params.weights, alpha=params.alpha,
        dense_units=tuple(params.dense_units), dropouts=tuple(params.dropouts), seed=params.seed)
    if stage == "train_scratch":
        classifier.get_layer("backbone").trainable = True
    return classifier


class Trainer:
    """Seeded, compiled models of one stage (under the device's distribution strategy) and its class weights."""

    def __init__(self, stage: str, params: TrainParams, examples_dir, num_classes: int, image_size: int,
                 frozen_model_dir=None):
        import keras

        keras.utils.set_random_seed(params.seed)
        self.strategy = distribution()
        with self.strategy.scope():
            self.classifier = stage_classifier(stage, params, num_classes, image_size, frozen_model_dir)
            self.head = self.classifier.get_layer("head")
            if feature_cache_views(params.feature_cache):
                self.fitted = self.head
            elif params.augment:
                inputs = keras.Input((image_size, image_size, 3), name="image")
                augmented = data.augmentation(params.seed)(inputs)
                self.fitted = keras.Model(inputs, self.classifier(augmented), name="augmented_classifier")
            else:
                self.fitted = self.classifier
            self.fitted.compile(
                optimizer=keras.optimizers.Adam(params.stage_learning_rate(stage)),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
                    min(TOP_K, num_classes - 1), name="top_k")])
            self.fitted.optimizer.build(self.fitted.trainable_variables)
        self.class_weight = None
        if params.use_class_weights:
            self.class_weight = data.class_weights(data.labels(examples_dir, "train"), num_classes)
            log.info("class weights %s", self.class_weight)

    def evaluate(self, inputs: StageData) -> dict:
        """Accuracy/top-k of the final model on un-augmented train and val."""
        batch_size = inputs.params.batch_size
        if inputs.views:
            train = self.head.evaluate(inputs.clean_train_features(), inputs.train_labels, batch_size=batch_size,
                                       verbose=0, return_dict=True)
            val = self.head.evaluate(inputs.val_data, verbose=0, return_dict=True)
        else:
            train = self.fitted.evaluate(data.batches(inputs.train_images, batch_size), verbose=0,
                                         return_dict=True)
            val = self.fitted.evaluate(inputs.val_data, verbose=0, return_dict=True)
        return {"final_train_accuracy": float(train["accuracy"]), "final_val_accuracy": float(val["accuracy"]),
                "final_train_loss": float(train["loss"]), "final_val_loss": float(val["loss"]),
                "top_k_categorical_accuracy": float(val["top_k"])}
