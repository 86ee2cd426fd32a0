"""The arq worker: runs training jobs through a GPU backend and answers test chats."""
