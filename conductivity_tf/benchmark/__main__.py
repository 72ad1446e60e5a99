from conductivity_tf.benchmark.cli import cli

cli()
