"""lpu.host"""
