"""lpu.hw"""
