# Faster R-CNN R50-FPN 1x on COCO 2017 with an STE 2:4 backbone (all convs but the RGB stem), initialised from our
# STE 2:4 ImageNet ResNet-50 (configs/imagenet/resnet50_ste_2_4.yaml); STE training continues on COCO.
_base_ = './faster-rcnn_r50_fpn_srste-2-4_1x_coco.py'
model = dict(backbone=dict(
    conv_cfg=dict(method='ste'),
    init_cfg=dict(checkpoint='{{$IMAGENET_CKPT_DIR:runs/imagenet}}/resnet50_ste_2_4/model_best.pth')))
