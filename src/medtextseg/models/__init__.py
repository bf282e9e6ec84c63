"""medtextseg.models"""
