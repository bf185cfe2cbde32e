"""Data-free quantisation: uniform fake quantisation, GDFQ's generators, BN-statistics and ClusterQ losses, and real
int8 export (vitlab spec clusterq). The methods themselves are ``vitlab.methods.{gdfq,clusterq,zeroq}``."""

from vitlab.quant import data as data  # noqa: F401  (registers foolbox_cifar10)
from vitlab.quant.generator import CifarGenerator, ConditionalBatchNorm2d, ImageNetGenerator, build_generator
from vitlab.quant.losses import (
    BNStatsRecorder,
    ClassCentroids,
    aligned_layer_start,
    bns_loss,
    class_bns_loss,
    class_bns_loss_released,
    kd_loss,
    zeroq_bn_loss,
)
from vitlab.quant.quantizer import (
    ActQuantizer,
    QuantConv2d,
    QuantizationError,
    QuantLinear,
    fake_quantize,
    quant_params,
    quantize_model,
    set_act_calibration,
)

__all__ = ["ActQuantizer", "BNStatsRecorder", "CifarGenerator", "ClassCentroids", "ConditionalBatchNorm2d",
           "ImageNetGenerator", "QuantConv2d", "QuantLinear", "QuantizationError", "aligned_layer_start",
           "bns_loss", "build_generator", "class_bns_loss", "class_bns_loss_released", "fake_quantize", "kd_loss",
           "quant_params", "quantize_model", "set_act_calibration", "zeroq_bn_loss"]
