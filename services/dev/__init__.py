"""Development only: `fastbrain dev` (`command`) and the embedded services it supervises (`embedded`).

Nothing in production imports this package; it lives outside `shared/` so that package stays
light enough to ship to the GPU side.
"""
