"""section5"""
