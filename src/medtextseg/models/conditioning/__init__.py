"""medtextseg.models.conditioning"""
