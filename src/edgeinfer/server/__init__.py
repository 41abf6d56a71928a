"""Protocol front ends: HTTP (KServe v2, OpenAI) and gRPC (KServe v2). They call the Engine only."""
