from conductivity_tf.dataset.cli import cli

cli()
