"""MedSAM-Agent for MONAI Label: app-local library.

Inner ring (never imports monailabel): ``agent``, ``tools``, ``learning``, ``data``.
Outer ring (thin MONAI Label adapters): ``configs``, ``infers``, ``trainers``, ``activelearning``.
"""
