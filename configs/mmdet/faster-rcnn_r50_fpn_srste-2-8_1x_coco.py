# Faster R-CNN R50-FPN 1x on COCO 2017 with an SR-STE 2:8 backbone (all convs but the RGB stem), initialised
# from our SR-STE 2:8 ImageNet ResNet-50; SR-STE training continues on COCO (decay 2e-4).
_base_ = './faster-rcnn_r50_fpn_dense_1x_coco.py'
model = dict(backbone=dict(
    conv_cfg=dict(pattern='2:8', method='srste'),
    init_cfg=dict(checkpoint='{{$IMAGENET_CKPT_DIR:runs/imagenet}}/resnet50_srste_2_8/model_best.pth')))
