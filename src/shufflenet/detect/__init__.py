"""Object detection with this library's backbones (Zhang et al. 2018, section 4.4, Table 7): COCO-format
data, an offline detection set made from Fashion-MNIST, torchvision's detectors on our feature maps, and
the COCO protocol's mAP."""
