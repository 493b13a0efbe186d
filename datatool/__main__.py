from datatool.cli import app

app(prog_name="datatool")
