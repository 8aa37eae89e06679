"""The models of one stage run: the classifier it saves, the compiled model `fit()` trains, its evaluation.

train_frozen and train_scratch build the classifier (scratch: backbone trainable, BatchNorm in training mode);
finetune loads the frozen-stage model and unfreezes its last `unfreeze_layers` non-BN backbone layers. The
fitted model is the head alone on cached features, else the classifier (behind the augmentation layers).

Scratch trains its BatchNorm layers: their moving statistics (momentum 0.999 in MobileNetV2) lag far behind the
weights after the few hundred steps of a small data set, so the model would be evaluated with statistics that do
not match its weights (val at chance while train accuracy rises). Before each evaluation they are re-estimated
over the clean training images (`reestimate_batchnorm`), and the learning rate warms up over the first epoch,
then follows a cosine decay over the epoch budget.
"""

from __future__ import annotations

import math

import numpy as np

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
            head = self.classifier.get_layer("head")
            if feature_cache_views(params.feature_cache):  # a model around the head: the saved head stays uncompiled
                features = keras.Input(head.inputs[0].shape[1:], name="features")
                self.fitted = keras.Model(features, head(features), name="head_on_features")
            elif params.augment:
                inputs = keras.Input((image_size, image_size, 3), name="image")
                augmented = data.augmentation(params.seed)(inputs)
                self.fitted = keras.Model(inputs, self.classifier(augmented), name="augmented_classifier")
            else:
                self.fitted = self.classifier
            self.batchnorm = trainable_batchnorm(self.classifier)
            self._bn_forward = None
            rate = learning_rate(stage, params, data.split_size(examples_dir, "train"))
            decay = params.weight_decay if stage != "finetune" else 0.0
            self.fitted.compile(
                optimizer=keras.optimizers.AdamW(rate, weight_decay=decay) if decay else keras.optimizers.Adam(rate),
                loss=smoothed_loss(num_classes, params.label_smoothing if stage != "finetune" else 0.0),
                metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
                    min(TOP_K, num_classes - 1), name="top_k")])
            self.fitted.optimizer.build(self.fitted.trainable_variables)
        self.class_weight = None
        if params.use_class_weights:
            self.class_weight = data.class_weights(data.labels(examples_dir, "train"), num_classes)
            log.info("class weights %s", self.class_weight)

    def validate(self, inputs: StageData) -> dict:
        """Loss and accuracy on val after an epoch (BatchNorm statistics re-estimated first, when trained)."""
        self.reestimate_batchnorm(inputs)
        val = self.fitted.evaluate(inputs.val_data, verbose=0, return_dict=True)
        return {"val_loss": float(val["loss"]), "val_accuracy": float(val["accuracy"])}

    def reestimate_batchnorm(self, inputs: StageData) -> None:
        """Set the trained BatchNorm layers' moving statistics to their average over the clean training images.

        One forward pass in training mode with momentum 0 (each batch's statistics land in the moving ones and
        are accumulated, weighted by the batch size); no weight is updated. A no-op for frozen BatchNorm.
        """
        import tensorflow as tf

        if not self.batchnorm:
            return
        momentum = [layer.momentum for layer in self.batchnorm]
        stats = [layer.moving_mean for layer in self.batchnorm] + [layer.moving_variance for layer in self.batchnorm]
        for layer in self.batchnorm:
            layer.momentum = 0.0
        if self._bn_forward is None:  # traced with momentum 0, so the moving statistics become the batch's
            self._bn_forward = tf.function(lambda x: self.classifier(x, training=True), reduce_retracing=True)
        total, sums = 0, [np.zeros(v.shape, "float64") for v in stats]
        try:
            for x, _ in data.batches(inputs.train_images, inputs.params.batch_size):
                self._bn_forward(x)
                n = int(x.shape[0])
                total += n
                for acc, variable in zip(sums, stats, strict=True):
                    acc += n * np.asarray(variable.numpy(), "float64")
        finally:
            for layer, value in zip(self.batchnorm, momentum, strict=True):
                layer.momentum = value
        for acc, variable in zip(sums, stats, strict=True):
            variable.assign((acc / total).astype(variable.dtype))

    def evaluate(self, inputs: StageData) -> dict:
        """Accuracy/top-k of the final model on un-augmented train and val."""
        batch_size = inputs.params.batch_size
        if inputs.views:
            train = self.fitted.evaluate(inputs.clean_train_features(), inputs.train_labels, batch_size=batch_size,
                                         verbose=0, return_dict=True)
        else:
            train = self.fitted.evaluate(data.batches(inputs.train_images, batch_size), verbose=0,
                                         return_dict=True)
        val = self.fitted.evaluate(inputs.val_data, verbose=0, return_dict=True)
        return {"final_train_accuracy": float(train["accuracy"]), "final_val_accuracy": float(val["accuracy"]),
                "final_train_loss": float(train["loss"]), "final_val_loss": float(val["loss"]),
                "top_k_categorical_accuracy": float(val["top_k"])}


def trainable_batchnorm(classifier) -> list:
    """The backbone's BatchNormalization layers that train (scratch); frozen stages have none."""
    import keras

    return [layer for layer in classifier.get_layer("backbone").layers
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def learning_rate(stage: str, params: TrainParams, num_train: int):
    """The stage's learning rate; scratch: linear warm-up over the first epoch, then cosine decay to 0."""
    import keras

    rate = params.stage_learning_rate(stage)
    if stage != "train_scratch":
        return rate
    steps = math.ceil(num_train / params.batch_size)
    decay = max(1, steps * (params.epochs - 1))
    return keras.optimizers.schedules.CosineDecay(0.0, decay, warmup_target=rate, warmup_steps=steps)


def smoothed_loss(num_classes: int, smoothing: float):
    """Cross-entropy on integer labels; with `smoothing` > 0, against targets smoothed by that share."""
    import keras

    if not smoothing:
        return "sparse_categorical_crossentropy"

    def loss(y_true, y_pred):
        target = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), num_classes)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=smoothing)

    return loss
