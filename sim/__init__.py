"""lpu.sim"""
