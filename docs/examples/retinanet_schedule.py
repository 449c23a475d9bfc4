# RetinaNet R50-FPN 1x (mmdetection 2.x): SGD, 500-iteration linear warm-up from 0.001x,
# lr x0.1 at epochs 8 and 11, 12 epochs.
#   fastopt lr-curve docs/examples/retinanet_schedule.py --iters-per-epoch 1000 --out lr.png
model = dict(type='fastopt.tools.zoo:build', name='retinanet_r50_fpn')
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001)
lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[8, 11])
runner = dict(type='EpochBasedRunner', max_epochs=12)
