"""lpu.boards"""
