"""Networks both halves use: the convolutional image network behind the similarity embeddings and the classifier
that checks the classes of denoised images."""
