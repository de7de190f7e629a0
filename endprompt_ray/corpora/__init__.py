"""Generated text: the demo corpus's station reports, Landmark's passkey prompt, the toy base's pretraining mix."""
