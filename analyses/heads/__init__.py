"""Which heads carry ICL: attribution, function vectors (Todd et al.), task vectors (Hendel et al.), induction, the head atlas."""
